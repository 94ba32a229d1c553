pytest_plugins = ["_fixtures_jobs"]
