-- Auth-state schema as deployed (docs/domain.md §2). Idempotent: safe to apply to an existing database.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
  NEW.updated_at = now();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE IF NOT EXISTS whatsapp_auth (
  company_id TEXT PRIMARY KEY,
  creds      JSONB NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS whatsapp_keys (
  company_id TEXT NOT NULL,
  key_type   TEXT NOT NULL,
  key_id     TEXT NOT NULL,
  value      JSONB NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  expires_at TIMESTAMPTZ NULL,
  PRIMARY KEY (company_id, key_type, key_id)
);

-- value is never indexed: JSONB values can exceed the btree row-size limit.
CREATE INDEX IF NOT EXISTS whatsapp_keys_company_idx ON whatsapp_keys (company_id);
CREATE INDEX IF NOT EXISTS whatsapp_keys_type_company_idx ON whatsapp_keys (key_type, company_id);
CREATE INDEX IF NOT EXISTS whatsapp_keys_expires_idx ON whatsapp_keys (expires_at)
  WHERE expires_at IS NOT NULL;

DROP TRIGGER IF EXISTS whatsapp_auth_updated_at ON whatsapp_auth;
CREATE TRIGGER whatsapp_auth_updated_at BEFORE UPDATE ON whatsapp_auth
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

DROP TRIGGER IF EXISTS whatsapp_keys_updated_at ON whatsapp_keys;
CREATE TRIGGER whatsapp_keys_updated_at BEFORE UPDATE ON whatsapp_keys
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
