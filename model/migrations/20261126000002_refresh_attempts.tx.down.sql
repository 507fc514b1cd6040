DROP TABLE IF EXISTS refresh_attempts;
