"""``python -m resilience.drill.standin.service``: how PM2 runs the stand-in."""

import sys

from resilience.drill.standin.service.startup import main

sys.exit(main())
