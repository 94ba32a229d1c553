pytest_plugins = ["_fixtures_server", "_fixtures_cluster"]
