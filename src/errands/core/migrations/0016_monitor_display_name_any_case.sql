-- A monitor's display name read the URL's host only from a lower-case scheme: with
-- "HTTPS://user:pw@host/" it fell back to the whole URL, credentials included, and an IPv6
-- host came out as "[". The scheme is matched in any case, the host is lower-cased as it is
-- compared, and a bracketed IPv6 host is kept whole. The API, the console, the status page and
-- the alerts all name monitors by this one function.
CREATE OR REPLACE FUNCTION monitor_display_name(name text, url text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT coalesce(
            name,
            lower((regexp_match(url, '^[a-z][a-z0-9+.-]*://(?:[^/@]*@)?(\[[^]/]*\]|[^/:?#]+)',
                                'i'))[1]),
            url
        )
    $$;
