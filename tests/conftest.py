pytest_plugins = ["_fixtures_server"]
