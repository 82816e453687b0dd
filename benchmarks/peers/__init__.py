"""The peers measured beside threadjobs: Procrastinate, DBOS Transact and Huey."""
