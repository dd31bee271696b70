"""Test support: a stand-in Glimpse browser client and dev server runners."""
