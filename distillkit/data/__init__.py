"""Data that needs no download: the offline quickstart's arithmetic word problems (arith), local file readers (files)."""
