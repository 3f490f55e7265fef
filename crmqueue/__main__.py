import multiprocessing

from crmqueue.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    main(prog_name="crmqueue")
