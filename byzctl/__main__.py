from byzctl.cli import main

if __name__ == "__main__":  # a fork server imports the main module too (launch/hosts.py)
    raise SystemExit(main())
