-- What the console's lists and the status page call a monitor: its name, or else its URL's host
-- (without any user:password@), as alerts.monitor_name does for notifications.
CREATE FUNCTION monitor_display_name(name text, url text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(name, substring(url FROM '^[a-z]+://(?:[^/@]*@)?([^/:?#]+)'), url) $$;
