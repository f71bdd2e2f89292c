"""`python -m mnist_lightning {fit,validate,test,predict,export} ...`: see mnist_lightning.cli."""

from mnist_lightning.cli import run

if __name__ == "__main__":
    run()
