from t5scale.cli.main import entry_point

entry_point()
