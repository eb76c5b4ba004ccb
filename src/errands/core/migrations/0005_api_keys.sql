-- API keys. Only the SHA-256 of a key is stored; the key itself is shown once, at creation.
-- A key is never deleted, only revoked, so listings keep the history of who had access.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
