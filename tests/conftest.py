pytest_plugins = [
    "_fixtures_server",
    "_fixtures_images",
    "_fixtures_engine",
    "_fixtures_jobs",
    "_fixtures_cluster",
    "_fixtures_bfl",
    "_fixtures_playground",
    "_fixtures_webhooks",
    "_fixtures_tls",
]
