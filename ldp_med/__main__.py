from ldp_med.cli import main

if __name__ == "__main__":
    main()
