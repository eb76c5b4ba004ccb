-- The key that signs the console's session cookies and form tokens: made once, shared by every
-- process on this database, so a session opened on one API process is valid on the others.
CREATE TABLE console_secret (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    secret     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
