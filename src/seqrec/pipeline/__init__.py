"""Pipeline stages: the plain functions the Prefect tasks wrap (one module per tasks/ module), and the run lock."""
