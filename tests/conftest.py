pytest_plugins = ["_fixtures_bfl"]
