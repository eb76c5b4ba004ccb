-- Uploads to convert: one row per upload, one claimable row per uploaded file, one row per PNG.

CREATE TABLE uploads (
    id         uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE upload_files (
    id           uuid PRIMARY KEY,
    upload_id    uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    filename     text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('pdf', 'png', 'jpeg')),
    size_bytes   bigint NOT NULL,
    original_key text NOT NULL UNIQUE,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'processing', 'done', 'failed')),
    error        text,
    attempts     integer NOT NULL DEFAULT 0,
    started_at   timestamptz,
    finished_at  timestamptz,
    -- claimable through core/claims.py: due while queued or processing, NULL once finished
    due_at       timestamptz,
    lease_owner  text,
    lease_until  timestamptz,
    UNIQUE (upload_id, position)
);

CREATE INDEX upload_files_due ON upload_files (due_at) WHERE due_at IS NOT NULL;

CREATE TABLE upload_images (
    file_id     uuid NOT NULL REFERENCES upload_files (id) ON DELETE CASCADE,
    page        integer NOT NULL,
    storage_key text NOT NULL UNIQUE,
    width       integer NOT NULL,
    height      integer NOT NULL,
    PRIMARY KEY (file_id, page)
);
