"""descore_sdk.training"""
