"""The web console and the public status page: HTML pages rendered on the server over what the
features store, with SVG charts drawn in Python."""
