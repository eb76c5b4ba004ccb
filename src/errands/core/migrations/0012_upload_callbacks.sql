-- Uploads may name a callback URL; once every file is done or failed, one delivery is created
-- for it in the same transaction, and its id kept so that it is never created twice.

ALTER TABLE uploads
    ADD COLUMN callback_url         text,
    ADD COLUMN callback_delivery_id uuid;
