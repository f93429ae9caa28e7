"""Secure sums at the orchestrator: the sessions of the ``secagg`` and ``he`` round modes
(:mod:`orchestrator.modes.secagg`, :mod:`orchestrator.modes.he`) and the sites' messages.

- :mod:`~orchestrator.secure.sessions`: a session's state (rows, files, the masked-input lock),
  opening, moving on and failing it;
- :mod:`~orchestrator.secure.he_files`: where an ``he`` session keeps its encrypted chunks;
- :mod:`~orchestrator.secure.messages`: which session a site's message is for (shared checks);
- :mod:`~orchestrator.secure.secagg_messages`, :mod:`~orchestrator.secure.he_messages`: the
  phase handlers that :mod:`orchestrator.secure_api` calls.
"""
