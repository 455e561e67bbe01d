"""Built-in prompt sets that need no download (the offline quickstart's arithmetic word problems)."""
