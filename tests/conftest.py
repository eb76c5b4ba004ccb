pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.app",
    "tests.fixtures.targets",
    "tests.fixtures.kafka",
    "tests.fixtures.s3",
]
