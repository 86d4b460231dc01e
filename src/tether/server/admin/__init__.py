"""The admin API: kills (``kills.kill_route``), approvals (``approvals.approval_routes``), incidents.

Every admin endpoint takes an admin virtual key (``tether keys create NAME --admin``) and refuses a model
key with 403 (``tether.server.auth.admin_caller``). The guard owns the domain logic; these own the HTTP.
"""
