"""Optional integrations, imported only when used.

Ray Train, Ray Tune with Optuna, and MLflow. Arrive with distributed training (issue 4).
"""
