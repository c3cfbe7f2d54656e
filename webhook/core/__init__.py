"""The admission core: AdmissionReview in, AdmissionReview (or a JSONPatch, or a refusal) out.

Everything that decides what admission answers lives here, as plain functions over raw JSON
dicts: reading the model annotations, checking URLs and sizes against the policy, building the
injected volumes and init container, the JSONPatch, and the offline rendering of a workload. It
makes no network or API calls and serves nothing; the only input it reads besides its arguments
is the policy itself (webhook.core.settings: environment variables and an optional mounted file,
read once when Settings is built). HTTP, TLS, metrics, logging setup and the command line are the
edge, in the modules beside this package (webhook.app, server, tls, metrics, logs, cli), which
call into the core and are never imported by it. Both rules, no HTTP or metrics library here and
no import of the edge, are import-linter contracts in pyproject.toml.

Import what you need from its modules (webhook.core.review, webhook.core.settings, ...); this
package re-exports nothing.
"""
