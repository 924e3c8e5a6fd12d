def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multi_process: starts several JAX processes over localhost (runs on the jax pass)",
    )
