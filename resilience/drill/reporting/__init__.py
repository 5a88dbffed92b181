"""The reporting layer of every drill: targets, timeline, environment, history and index, the
pages' rendering, and a browser check of the console. :mod:`resilience.drill.report` is the
entry point drills use."""
