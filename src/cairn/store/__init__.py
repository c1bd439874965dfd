"""The Postgres side: every SQL text, the migrations, connections, error translation."""
