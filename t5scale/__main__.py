from t5scale.cli import entry_point

entry_point()
