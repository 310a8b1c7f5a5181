"""Tests of the serving benchmark (bench/)."""
