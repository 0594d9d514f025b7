from scratch as Mixed-Case
workdir /app
env key=value \
    other="two words"
copy \
  # comments inside continuations are dropped

  a.txt b.txt ./
label maintainer=someone
from mixed-case
Cmd ["/app/a.txt"]
