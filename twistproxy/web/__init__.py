"""
The web UI (``twistd twistproxy --web``): a single page served from the
proxy's own process with twisted.web, over a SQLite flow store.

- :mod:`twistproxy.web.store`: :class:`~twistproxy.web.store.FlowStore`,
  the flows in SQLite (large bodies in rows of their own, read on demand),
  and the filter views the UI pages from.
- :mod:`twistproxy.web.addon`: the addons that write every flow to the
  store in batches and hold the flows the intercept filter matches.
- :mod:`twistproxy.web.api` and :mod:`twistproxy.web.service`: the HTTP
  API, the push channel (server-sent events), the static files and the
  token, ``Host`` and ``Origin`` checks in front of them.
- ``static/``: the page, plain ES modules (no build step).
"""
