ARG A
ARG B=y
ARG C=1
FROM scratch
ARG A
ARG B
ARG C
ENV X=${A:-} Y=${A:+} Z=${A:-$}
ENV P="${C}}" Q=${C}$ R=$${C} S=\${C}
ENV N=${A:-${B:-z}} M=${A:+${B}} O=${B:-${A}}
