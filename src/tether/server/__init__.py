"""tether's one HTTP server: the model API, the admin API and ops on one port.

- ``tether.server.app``: ``build_app(settings, parts)``, the ASGI app from the parts it serves.
- ``tether.server.run``: the process around it (``tether serve``): start-up checks, socket, signals,
  graceful drain, the cost journal, the stale-reservation sweep and the budget-overrun recorder.

Nothing is imported here, so ``import tether.server`` stays cheap for the CLI.
"""
