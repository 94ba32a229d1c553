pytest_plugins = ["_fixtures_cluster"]
