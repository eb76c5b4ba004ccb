from errands.cli import app

app(prog_name="errands")
