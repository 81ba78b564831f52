"""What people look at: ``guild top`` (``top``) and the HTML report (``report``).

Both draw data that ``guildcore.metrics`` records; neither records anything.
Their libraries (rich, plotly) are imported inside the functions that draw.
"""
