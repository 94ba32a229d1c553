pytest_plugins = ["_fixtures_server", "_fixtures_cluster", "_fixtures_bfl", "_fixtures_engine"]
