"""Local fakes of the three vendors' HTTP APIs (real HTTP on loopback, built on FaultServer)."""
