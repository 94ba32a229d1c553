pytest_plugins = [
    "tests._fixtures_engine",
]
