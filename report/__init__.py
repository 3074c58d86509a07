"""make report: Markdown reports and plots built from results/ and logs/ only."""
