"""Apache Airflow provider for Kaleyra number capability checks (RCS and SMS over IP)."""

__version__ = "0.1.0"
