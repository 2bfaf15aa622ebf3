"""What every domain shares: settings, database sessions, the error shape, auth and routing."""
