# escape=`
FROM scratch
COPY dir\file.txt `
     C:\target\
ENV PATH_WIN=C:\Tools\bin `
    OTHER=`$literal
WORKDIR /work
