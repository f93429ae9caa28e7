"""The data owner's pages at a datasite: code requests, datasets, consent.

Data owners decide (approve, deny, revoke) and record consent; compliance officers may read
every page; node admins may read the dataset pages. Views are thin: services change state,
forms validate, and the small helpers beside each page (and in :mod:`datasite.views.display`)
only shape what the templates show. One module per part: :mod:`~datasite.views.requests`,
:mod:`~datasite.views.datasets`, :mod:`~datasite.views.consent`.
"""
