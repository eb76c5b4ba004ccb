-- Uploads: a preview and a byte count per PNG (the output quota counts them), and the index the
-- upload list and upload retention read in creation order.

ALTER TABLE upload_images
    ADD COLUMN preview_key text UNIQUE,
    ADD COLUMN size_bytes  bigint NOT NULL DEFAULT 0;

CREATE INDEX uploads_created ON uploads (created_at, id);
