"""Test support for stn_ext: builds that exist only to test the library (not used by it)."""
