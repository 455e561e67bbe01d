"""Publishing: model and dataset cards (from data_cards/ templates) and uploads to the Hugging Face Hub."""
