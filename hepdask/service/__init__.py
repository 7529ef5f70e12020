"""Machine learning as a service: submit a training over HTTP, follow it, fetch or use its model.

``python -m hepdask service`` runs one FastAPI process in front of a Dask cluster chosen like
``run``'s. The data flow of a job, module by module:

* :mod:`~hepdask.service.auth`: who is asking (static tokens or OIDC JWTs);
* :mod:`~hepdask.service.uploads`: a user's folders, from size-limited, safely unpacked
  ``.tar.gz`` uploads;
* :mod:`~hepdask.service.confine`: a submitted config may read only that user's folders and the
  data roots and redirectors the operator allows;
* :mod:`~hepdask.service.state`: jobs and uploads in a database (SQLite by default);
* :mod:`~hepdask.service.runner`: the queue; each job is a ``python -m hepdask run``
  subprocess on the shared cluster, so a crashing job cannot take the service down;
* :mod:`~hepdask.service.app`: the HTTP API (jobs, the MLaaS4HEP-compatible endpoints, and
  inference on every finished job's model through :mod:`hepdask.serve`);
* :mod:`~hepdask.service.client`: the Python client behind ``hepdask submit``, ``jobs``,
  ``logs`` and ``fetch``.
"""

from __future__ import annotations

from .settings import ServiceSettings

__all__ = ["ServiceSettings"]
