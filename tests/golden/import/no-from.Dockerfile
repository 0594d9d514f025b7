# only an arg
ARG X=1
RUN echo $X
